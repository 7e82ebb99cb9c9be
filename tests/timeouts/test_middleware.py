"""TimeoutMiddleware on raw ASGI apps: exact message sequences, cancellation and deadlines."""

from __future__ import annotations

import contextvars
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asgi_resilience import ConfigurationError, DeadlineExceeded, TimeoutMiddleware, current_deadline, remaining_time
from asgi_resilience.observability import Telemetry
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send

START = "http.response.start"
BODY = "http.response.body"


def timeouts(telemetry: Telemetry) -> dict[str, float]:
    inst = telemetry.instrument("asgi_resilience.timeouts")
    return {dict(key)["phase"]: value for key, value in inst.totals.items()}


async def ok(send: Send, body: bytes = b"ok") -> None:
    await send({"type": START, "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": BODY, "body": body})


async def test_slow_handler_before_start_gets_one_504_and_is_cancelled() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await anyio.sleep(5)
            events.append("woke")
        finally:
            events.append("finally")

    telemetry = Telemetry()
    started = time.monotonic()
    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05, telemetry=telemetry))
    assert time.monotonic() - started < 1
    assert h.types == [START, BODY]
    assert h.status == 504
    assert h.header("content-type") == "application/problem+json"
    assert h.json()["type"] == "timeout" and h.json()["status"] == 504
    assert h.complete
    assert events == ["finally"]
    assert timeouts(telemetry) == {"before_start": 1}


async def test_status_503_is_allowed_and_408_is_refused() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(5)

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05, status=503))
    assert (h.status, h.json()["status"], h.json()["title"]) == (503, 503, "Service Unavailable")
    with pytest.raises(ConfigurationError, match="408 means the client"):
        TimeoutMiddleware(app, status=408)
    with pytest.raises(ConfigurationError, match="504"):
        TimeoutMiddleware(app, status=500)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"timeout": "10"},
        {"idle_timeout": 0},
        {"mode": "whole"},
        {"rules": {"reports/*": 1.0}},
        {"rules": {"/x": -1.0}},
        {"deadline_headers": ["x-deadline"]},
        {"deadline_headers": "grpc-timeout"},
        {"trusted_proxies": ["not-an-ip"]},
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
        pass

    with pytest.raises(ConfigurationError):
        TimeoutMiddleware(app, **options)


async def test_streaming_past_the_deadline_in_complete_mode_never_sends_a_second_start() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"a", "more_body": True})
        await anyio.sleep(5)
        await send({"type": BODY, "body": b"b"})  # pragma: no cover

    telemetry = Telemetry()
    h = ASGIHarness()
    with pytest.raises(DeadlineExceeded, match="aborted"):
        await h.run(TimeoutMiddleware(app, timeout=0.05, mode="complete", telemetry=telemetry))
    assert h.types == [START, BODY]
    assert h.messages[1]["more_body"] is True  # no fake final body
    assert h.status == 200
    assert timeouts(telemetry) == {"after_start": 1}


async def test_first_byte_mode_lets_a_started_stream_run_past_the_deadline() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        assert current_deadline() is None  # the clock stopped: outbound calls are no longer capped
        await send({"type": BODY, "body": b"a", "more_body": True})
        await anyio.sleep(0.15)
        await send({"type": BODY, "body": b"b"})

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05))
    assert h.types == [START, BODY, BODY]
    assert (h.status, h.body, h.complete) == (200, b"ab", True)


async def test_response_started_after_the_deadline_without_a_checkpoint_gets_the_504() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        time.sleep(0.08)  # noqa: ASYNC251 - blocks the loop: the timer cannot fire before the app sends
        await ok(send)

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05))
    assert h.types == [START, BODY]
    assert h.status == 504


async def test_slow_background_task_after_the_response_runs_to_completion() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await ok(send)
        await anyio.sleep(0.15)  # a background task, after the final body message
        events.append("background done")

    for mode in ("first_byte", "complete"):
        h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05, mode=mode))  # type: ignore[arg-type]
        assert h.types == [START, BODY]
        assert (h.status, h.body) == (200, b"ok")
    assert events == ["background done", "background done"]


async def test_idle_timeout_cuts_a_stalled_stream_but_not_a_steady_one() -> None:
    def streamer(gaps: list[float]) -> Any:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": START, "status": 200, "headers": []})
            for gap in gaps:
                await anyio.sleep(gap)
                await send({"type": BODY, "body": b".", "more_body": True})
            await send({"type": BODY, "body": b""})

        return app

    steady = await ASGIHarness().run(TimeoutMiddleware(streamer([0.03] * 6), timeout=5, idle_timeout=0.1))
    assert steady.types == [START] + [BODY] * 7 and steady.complete

    telemetry = Telemetry()
    stalled = ASGIHarness()
    with pytest.raises(DeadlineExceeded, match="idle timeout of 0.1 s"):
        await stalled.run(TimeoutMiddleware(streamer([0.01, 0.5]), timeout=5, idle_timeout=0.1, telemetry=telemetry))
    assert stalled.types == [START, BODY]
    assert not stalled.complete
    assert timeouts(telemetry) == {"after_start": 1}

    # complete mode: the overall limit still applies to a steady stream
    with pytest.raises(DeadlineExceeded, match="timeout of 0.1 s"):
        await ASGIHarness().run(
            TimeoutMiddleware(streamer([0.03] * 10), timeout=0.1, idle_timeout=0.08, mode="complete")
        )


async def test_idle_timeout_also_bounds_the_gap_after_the_start_in_complete_mode() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        await anyio.sleep(0.5)

    h = ASGIHarness()
    with pytest.raises(DeadlineExceeded):
        await h.run(TimeoutMiddleware(app, timeout=5, idle_timeout=0.05, mode="complete"))
    assert h.types == [START]


async def test_outer_cancellation_propagates_without_a_504() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await anyio.sleep(5)
        finally:
            events.append("finally")

    telemetry = Telemetry()
    h = ASGIHarness()
    with anyio.CancelScope() as outer:
        outer.deadline = anyio.current_time() + 0.05
        await h.run(TimeoutMiddleware(app, timeout=1.0, telemetry=telemetry))
    assert outer.cancelled_caught  # the cancellation reached the outer scope
    assert h.messages == []
    assert events == ["finally"]
    assert timeouts(telemetry) == {}


async def test_outer_cancellation_after_our_deadline_still_propagates() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.1)  # cleanup that outlives both deadlines
        await anyio.sleep(5)

    h = ASGIHarness()
    with anyio.CancelScope() as outer:
        outer.deadline = anyio.current_time() + 0.07
        await h.run(TimeoutMiddleware(app, timeout=0.05))
    assert outer.cancelled_caught


async def test_an_early_exception_propagates_at_once() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("boom")

    started = time.monotonic()
    h = ASGIHarness()
    with pytest.raises(ValueError, match="boom"):
        await h.run(TimeoutMiddleware(app, timeout=5.0))
    assert time.monotonic() - started < 1
    assert h.messages == []


async def test_contextvars_set_by_the_app_are_visible_outside() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        var.set("set by the app")
        await ok(send)

    inner = TimeoutMiddleware(app, timeout=1.0)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(scope, receive, send)
        seen.append(var.get())

    await ASGIHarness().run(outer)
    assert seen == ["set by the app"]


async def test_remaining_time_and_current_deadline_inside_a_handler() -> None:
    seen: list[tuple[float | None, float | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((current_deadline(), remaining_time()))
        await ok(send)

    before = time.monotonic()
    await ASGIHarness().run(TimeoutMiddleware(app, timeout=2.0))
    deadline, remaining = seen[0]
    assert deadline is not None and before + 2.0 <= deadline <= time.monotonic() + 2.0
    assert remaining is not None and 1.5 < remaining <= 2.0
    assert current_deadline() is None and remaining_time() is None


async def seen_remaining(mw_options: dict[str, Any], **scope: Any) -> float | None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining_time())
        await ok(send)

    await ASGIHarness().run(TimeoutMiddleware(app, **mw_options), http_scope(**scope))
    return seen[0]


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("grpc-timeout", "1S", 1.0),
        ("grpc-timeout", "1500m", 1.5),
        ("grpc-timeout", "2000000u", 2.0),
        ("grpc-timeout", "90000000n", 0.09),
        ("grpc-timeout", "1M", 60.0),  # upper-case M is minutes: clamped to our 30 s
        ("grpc-timeout", "1H", 30.0),
        ("connect-timeout-ms", "2500", 2.5),
        ("x-request-timeout", "750", 0.75),
    ],
)
async def test_deadline_headers_from_a_trusted_peer_shorten_the_limit(header: str, value: str, expected: float) -> None:
    remaining = await seen_remaining(
        {"timeout": 30.0, "trusted_proxies": ["10.0.0.0/8"]}, headers=[(header, value)], client=("10.1.2.3", 4000)
    )
    assert remaining is not None
    assert min(expected, 30.0) - 0.5 < remaining <= min(expected, 30.0)


async def test_deadline_header_never_extends_the_limit_and_smallest_wins() -> None:
    remaining = await seen_remaining(
        {"timeout": 1.0, "trusted_proxies": 1},
        headers=[("x-request-timeout", "600000"), ("grpc-timeout", "5S")],
    )
    assert remaining is not None and 0.5 < remaining <= 1.0
    remaining = await seen_remaining(
        {"timeout": 10.0, "trusted_proxies": 1}, headers=[("x-request-timeout", "3000"), ("grpc-timeout", "2S")]
    )
    assert remaining is not None and 1.5 < remaining <= 2.0


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("grpc-timeout", "1s"),  # unknown unit (units are case-sensitive)
        ("grpc-timeout", "123456789S"),  # more than 8 digits
        ("grpc-timeout", "S"),
        ("grpc-timeout", "-5S"),
        ("grpc-timeout", "0S"),
        ("grpc-timeout", "1.5S"),
        ("connect-timeout-ms", "abc"),
        ("connect-timeout-ms", "12345678901"),  # more than 10 digits
        ("connect-timeout-ms", "0"),
        ("x-request-timeout", "-100"),
        ("x-request-timeout", "1e3"),
        ("x-request-timeout", "１２"),  # non-ASCII digits
        ("x-request-timeout", ""),
    ],
)
async def test_malformed_deadline_headers_are_ignored(header: str, value: str) -> None:
    remaining = await seen_remaining(
        {"timeout": 5.0, "trusted_proxies": 1}, headers=[(header.encode(), value.encode("utf-8"))]
    )
    assert remaining is not None and 4.5 < remaining <= 5.0


async def test_deadline_headers_from_untrusted_peers_are_ignored() -> None:
    headers = [("grpc-timeout", "100m"), ("connect-timeout-ms", "100"), ("x-request-timeout", "100")]
    for options, client in [
        ({"timeout": 5.0}, ("10.1.2.3", 1)),  # nobody trusted (default)
        ({"timeout": 5.0, "trusted_proxies": ["10.0.0.0/8"]}, ("192.0.2.7", 1)),  # peer not in the list
        ({"timeout": 5.0, "trusted_proxies": ["10.0.0.0/8"]}, None),  # no peer at all
        ({"timeout": 5.0, "trusted_proxies": 1, "deadline_headers": []}, ("10.1.2.3", 1)),  # headers turned off
    ]:
        remaining = await seen_remaining(options, headers=headers, client=client)
        assert remaining is not None and remaining > 4.5, options


async def test_only_the_chosen_deadline_headers_are_read() -> None:
    options = {"timeout": 5.0, "trusted_proxies": 1, "deadline_headers": ["Connect-Timeout-Ms"]}
    remaining = await seen_remaining(options, headers=[("grpc-timeout", "100m"), ("connect-timeout-ms", "1000")])
    assert remaining is not None and 0.5 < remaining <= 1.0


async def test_a_header_deadline_produces_the_504() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(5)

    mw = TimeoutMiddleware(app, timeout=30.0, trusted_proxies=1)
    h = await ASGIHarness().run(mw, http_scope(headers=[("grpc-timeout", "50m")]))
    assert (h.status, h.json()["type"]) == (504, "timeout")


async def test_rules_exact_path_beats_patterns_and_none_exempts() -> None:
    options = {"timeout": 1.0, "rules": {"/reports/*": 60.0, "/reports/live": None, "/events": None}}
    remaining = await seen_remaining(options, path="/reports/2024")
    assert remaining is not None and 59 < remaining <= 60
    assert await seen_remaining(options, path="/reports/live") is None
    assert await seen_remaining(options, path="/events") is None
    remaining = await seen_remaining(options, path="/other")
    assert remaining is not None and remaining <= 1.0
    assert await seen_remaining({"timeout": None}, path="/") is None


async def test_an_accept_event_stream_request_header_never_switches_the_timeout_off() -> None:
    """A client sending ``Accept: text/event-stream`` on any route is timed like every other request."""
    sse = [("accept", "text/event-stream")]
    remaining = await seen_remaining({"timeout": 1.0}, headers=sse)
    assert remaining is not None and remaining <= 1.0
    remaining = await seen_remaining({"timeout": 1.0}, headers=[("accept", "text/event-stream;q=0")])
    assert remaining is not None and remaining <= 1.0
    remaining = await seen_remaining({"timeout": 1.0, "rules": {"/": 3.0}}, headers=sse)
    assert remaining is not None and 2.5 < remaining <= 3.0


async def test_a_slow_upload_with_an_event_stream_accept_header_gets_its_504() -> None:
    """The request-body phase is always timed: an idle upload cannot hold a slot past the limit."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await ok(send)

    async def slow_receive() -> dict[str, Any]:
        await anyio.sleep(5)  # the client never finishes its upload
        return {"type": "http.request", "body": b"x", "more_body": False}  # pragma: no cover

    h = ASGIHarness()
    started = time.monotonic()
    scope = http_scope("POST", headers=[("accept", "text/event-stream"), ("content-length", "100")])
    await TimeoutMiddleware(app, timeout=0.05)(scope, slow_receive, h.send)
    assert time.monotonic() - started < 1
    assert h.status == 504


def sse_app(gaps: list[float], *, before_start: float = 0.0, content_type: bytes = b"text/event-stream") -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(before_start)
        await send({"type": START, "status": 200, "headers": [(b"content-type", content_type)]})
        for gap in gaps:
            await anyio.sleep(gap)
            await send({"type": BODY, "body": b"data: x\n\n", "more_body": True})
        await send({"type": BODY, "body": b""})

    return app


async def test_an_event_stream_response_stops_the_clock_at_its_start() -> None:
    """Decided from the response's Content-Type: the stream may outlive the limit and its idle gap."""
    for options in ({"mode": "complete"}, {"idle_timeout": 0.05}, {"mode": "complete", "idle_timeout": 0.05}):
        app = sse_app([0.1, 0.1], content_type=b"Text/Event-Stream; charset=utf-8")
        h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05, **options))
        assert (h.status, h.complete, h.body.count(b"data:")) == (200, True, 2), options


async def test_an_event_stream_response_is_still_timed_before_it_starts() -> None:
    h = await ASGIHarness().run(TimeoutMiddleware(sse_app([], before_start=5), timeout=0.05))
    assert h.status == 504


async def test_event_stream_exemption_yields_to_a_rule_and_can_be_turned_off() -> None:
    stalled = sse_app([0.01, 0.5])
    with pytest.raises(DeadlineExceeded):
        await ASGIHarness().run(TimeoutMiddleware(stalled, timeout=5.0, idle_timeout=0.1, exempt_event_streams=False))
    with pytest.raises(DeadlineExceeded):
        await ASGIHarness().run(TimeoutMiddleware(stalled, timeout=5.0, idle_timeout=0.1, rules={"/": 5.0}))
    with pytest.raises(DeadlineExceeded):  # other media types are not exempt
        await ASGIHarness().run(
            TimeoutMiddleware(sse_app([0.01, 0.5], content_type=b"text/plain"), timeout=5.0, idle_timeout=0.1)
        )


async def test_websocket_and_lifespan_pass_through_untouched() -> None:
    seen: list[tuple[str, float | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.1)
        seen.append((scope["type"], current_deadline()))
        await send({"type": f"{scope['type']}.marker"})

    mw = TimeoutMiddleware(app, timeout=0.01)
    ws = await ASGIHarness().run(mw, http_scope(path="/ws", type="websocket"))
    lifespan = await ASGIHarness().run(mw, {"type": "lifespan", "asgi": {"version": "3.0"}})
    assert seen == [("websocket", None), ("lifespan", None)]
    assert ws.types == ["websocket.marker"] and lifespan.types == ["lifespan.marker"]


async def test_client_gone_before_the_504_is_not_an_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(5)

    async def gone(message: Any) -> None:
        raise OSError("the client has disconnected")

    h = ASGIHarness()
    await TimeoutMiddleware(app, timeout=0.02)(http_scope(), h.receive, gone)


def test_trio_backend_cancels_answers_and_lets_outer_cancellation_through() -> None:
    """Same behaviour on trio, where the cancel scope's own deadline keeps the time."""
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await anyio.sleep(5)
        finally:
            events.append("finally")

    async def main() -> tuple[ASGIHarness, ASGIHarness, bool]:
        timed = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05))
        outer_run = ASGIHarness()
        with anyio.move_on_after(0.05) as outer:
            await outer_run.run(TimeoutMiddleware(app, timeout=1.0))
        return timed, outer_run, outer.cancelled_caught

    timed, outer_run, caught = anyio.run(main, backend="trio")
    assert timed.types == [START, BODY] and timed.status == 504
    assert outer_run.messages == [] and caught
    assert events == ["finally", "finally"]


async def test_head_request_gets_a_504_without_a_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(5)

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.02), http_scope("HEAD"))
    assert h.types == [START, BODY]
    assert h.status == 504 and h.body == b""
    assert int(h.header("content-length") or 0) > 0  # the length of the body a GET would have had


async def test_pathsend_is_a_final_message_that_stops_the_clock() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/tmp/file"})
        await anyio.sleep(0.1)
        events.append("after")

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.03, mode="complete"))
    assert h.types == [START, "http.response.pathsend"]
    assert events == ["after"]


async def test_a_failure_caused_by_the_deadline_is_answered_as_a_timeout() -> None:
    """The app's own call is capped by the same deadline and fails just before the cancellation lands
    (an httpx transport capping an outbound call by ``remaining_time()`` does): a 504, not an error."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        left = remaining_time()
        assert left is not None
        with anyio.CancelScope(shield=True):  # the call ends exactly at the deadline, by itself
            await anyio.sleep(left + 0.01)
        raise TimeoutError("the outbound call's total deadline passed")

    harness = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05), http_scope())
    assert harness.status == 504 and harness.complete


async def test_a_failure_before_the_deadline_still_propagates() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("a bug, long before the deadline")

    with pytest.raises(ValueError, match="a bug"):
        await ASGIHarness().run(TimeoutMiddleware(app, timeout=5), http_scope())


async def test_an_app_that_swallows_its_cancellation_still_gets_the_504_and_the_task_is_not_left_cancelled() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            pass  # a badly behaved app: returns normally instead of letting the cancellation through

    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05))
    assert h.status == 504
    await anyio.sleep(0.01)  # the task carries no leftover cancellation into what follows
    await anyio.lowlevel.checkpoint()


async def test_a_thread_wait_is_not_interrupted_and_the_504_still_comes_on_time() -> None:
    finished: list[float] = []

    def blocking() -> None:
        time.sleep(0.2)
        finished.append(time.monotonic())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.to_thread.run_sync(blocking)  # a shielded wait: the thread keeps its limiter slot
        await ok(send)

    started = time.monotonic()
    h = ASGIHarness()
    sent: list[float] = []

    async def send(message: Any) -> None:
        sent.append(time.monotonic())
        await h.send(message)

    await TimeoutMiddleware(app, timeout=0.05)(http_scope(), h.receive, send)
    assert h.status == 504 and finished  # the request ended after its thread did
    assert sent[0] - started < 0.18  # the 504 did not wait for the thread (it is 0.2 s)


async def test_concurrent_requests_each_time_out_at_their_own_deadline() -> None:
    # the first deadlines share one loop timer in arrival order; a shorter one arriving later, and
    # requests that finish early, must not move anyone's deadline
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/fast":
            await ok(send)
            return
        await anyio.sleep(5)

    mw = TimeoutMiddleware(app, timeout=0.3, rules={"/short": 0.05})
    answered: dict[str, float] = {}
    started = time.monotonic()

    async def call(path: str, delay: float) -> None:
        await anyio.sleep(delay)
        h = await ASGIHarness().run(mw, http_scope(path=path))
        answered[path] = time.monotonic() - started
        assert h.status == (200 if path == "/fast" else 504)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "/slow", 0.0)
        tg.start_soon(call, "/fast", 0.01)
        tg.start_soon(call, "/short", 0.02)
        tg.start_soon(call, "/slow2", 0.03)
    assert answered["/fast"] < 0.25  # not held by anyone's deadline (bounds are loose: a loaded machine)
    assert 0.06 <= answered["/short"] < 0.25  # its own 50 ms, not the 300 ms of the first request
    assert 0.3 <= answered["/slow"] < answered["/slow2"] < 0.6


async def test_a_shorter_deadline_after_finished_longer_ones_fires_on_time() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await anyio.sleep(5)
        await ok(send)

    mw = TimeoutMiddleware(app, timeout=2.0, rules={"/slow": 0.05})
    for _ in range(3):  # finished requests whose 2 s deadlines the shared timer was armed for
        assert (await ASGIHarness().run(mw, http_scope(path="/"))).status == 200
    started = time.monotonic()
    assert (await ASGIHarness().run(mw, http_scope(path="/slow"))).status == 504
    assert time.monotonic() - started < 1.0  # its own 50 ms, not the 2 s of the finished ones
