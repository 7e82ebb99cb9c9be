"""Sans-io problem rendering: Problem, ProblemDetails, render (RFC 9457)."""

from __future__ import annotations

import json

import pytest

from asgi_resilience import (
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceeded,
    Overloaded,
    Problem,
    ProblemDetails,
    RateLimitExceeded,
    ResilienceError,
    RetriesExhausted,
    StorageError,
)
from asgi_resilience.errors._problem import from_error, internal_error, render


def test_problem_renders_every_member_exactly() -> None:
    exc = Problem(
        409, type="out-of-stock", title="Out of stock", detail="Item 12 is sold out", instance="/o/1", item=12
    )
    body, headers = render(from_error(exc))
    assert json.loads(body) == {
        "type": "out-of-stock",
        "title": "Out of stock",
        "status": 409,
        "detail": "Item 12 is sold out",
        "instance": "/o/1",
        "item": 12,
    }
    assert (b"content-type", b"application/problem+json") in headers
    assert (b"content-length", str(len(body)).encode()) in headers


def test_problem_without_type_is_about_blank_with_reason_phrase() -> None:
    body, _ = render(from_error(Problem(404)))
    assert json.loads(body) == {"type": "about:blank", "title": "Not Found", "status": 404}


def test_type_base_makes_slugs_absolute_but_keeps_absolute_uris() -> None:
    slug = ProblemDetails(status=429, type="rate-limited")
    absolute = ProblemDetails(status=429, type="https://other.example/p/x")
    assert slug.body(type_base="https://example.com/problems/")["type"] == "https://example.com/problems/rate-limited"
    assert absolute.body(type_base="https://example.com/problems/")["type"] == "https://other.example/p/x"
    assert slug.body()["type"] == "rate-limited"


@pytest.mark.parametrize("status", [200, 399, 600, "500", True])
def test_problem_status_must_be_an_error_status(status: object) -> None:
    with pytest.raises(ConfigurationError, match="400 to 599"):
        Problem(status)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ab", "1abc", "with-dash", "spa ce"])
def test_problem_extension_names_are_validated(name: str) -> None:
    with pytest.raises(ConfigurationError, match="extension name"):
        Problem(400, **{name: 1})


def test_problem_headers_are_carried_but_cannot_override_content_type_or_inject() -> None:
    exc = Problem(
        401,
        headers={"WWW-Authenticate": 'Bearer realm="api"', "Content-Type": "text/html", "X-Bad": "a\r\nSet-Cookie: x"},
    )
    _, headers = render(from_error(exc))
    assert (b"www-authenticate", b'Bearer realm="api"') in headers
    assert [v for k, v in headers if k == b"content-type"] == [b"application/problem+json"]
    assert all(k != b"x-bad" for k, _ in headers)


def test_unserialisable_extension_values_do_not_crash() -> None:
    body, _ = render(from_error(Problem(400, payload=object())))
    assert json.loads(body)["payload"].startswith("<object object")


@pytest.mark.parametrize(
    ("exc", "status", "slug", "retryable"),
    [
        (RateLimitExceeded(retry_after=1.2, violated_policies=["writes"]), 429, "rate-limited", True),
        (Overloaded(retry_after=1), 503, "overloaded", True),
        (DeadlineExceeded(), 504, "timeout", True),
        (CircuitOpenError(retry_after=5, origin="https://api.example"), 503, "circuit-open", True),
        (RetriesExhausted(attempts=3), 502, "retries-exhausted", True),
        (StorageError("redis down at 10.0.0.3"), 503, "storage-unavailable", True),
        (ConfigurationError("bad option"), 500, None, False),
    ],
)
def test_resilience_errors_carry_status_slug_and_retryability(
    exc: ResilienceError, status: int, slug: str | None, retryable: bool
) -> None:
    assert isinstance(exc, ResilienceError)
    assert (exc.status, exc.type, exc.retryable) == (status, slug, retryable)
    body = from_error(exc).body()
    assert body["status"] == status
    assert body["type"] == (slug or "about:blank")
    assert isinstance(body["title"], str)


def test_retry_after_header_is_whole_seconds_rounded_up() -> None:
    exc = RateLimitExceeded(retry_after=1.2, violated_policies=["writes"])
    assert exc.headers == {"Retry-After": "2"}
    body = from_error(exc).body()
    assert body["violated_policies"] == ["writes"]


def test_retry_after_must_be_finite_and_positive() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        Overloaded(retry_after=-1)
    with pytest.raises(ValueError, match="retry_after"):
        Overloaded(retry_after=float("inf"))


def test_storage_error_detail_is_not_exposed_without_debug() -> None:
    exc = StorageError("redis down at 10.0.0.3")
    assert "detail" not in from_error(exc).body()
    assert from_error(exc, debug=True).body()["detail"] == "redis down at 10.0.0.3"


def test_internal_error_never_leaks_without_debug() -> None:
    try:
        raise ValueError("secret token abc123")
    except ValueError as exc:
        quiet = json.dumps(internal_error(exc).body())
        loud = internal_error(exc, debug=True).body()
    assert "secret" not in quiet and "ValueError" not in quiet and "Traceback" not in quiet
    assert loud["detail"] == "secret token abc123"
    assert loud["exception"]["type"] == "builtins.ValueError"
    assert any("Traceback" in line for line in loud["exception"]["traceback"])


def test_transport_errors_are_httpx_transport_errors() -> None:
    import httpx

    assert issubclass(CircuitOpenError, httpx.TransportError)
    assert issubclass(RetriesExhausted, httpx.TransportError)
    exc = CircuitOpenError(retry_after=3, origin="https://a.example")
    assert exc.origin == "https://a.example"
    assert exc.headers == {"Retry-After": "3"}


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
