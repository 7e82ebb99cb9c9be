"""ConcurrencyLimitMiddleware on raw ASGI apps: shedding, queueing, slot release on every exit path."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

from asgi_resilience import ConcurrencyLimitMiddleware, ConfigurationError
from asgi_resilience.observability import Telemetry
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Receive, Scope, Send

START = "http.response.start"
BODY = "http.response.body"


class Gate:
    """An app whose requests block until released; records the order in which they entered."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.release = anyio.Event()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.entered.append(scope["path"])
        await self.release.wait()
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"ok"})


def totals(telemetry: Telemetry, name: str) -> dict[tuple[tuple[str, str], ...], Any]:
    return dict(telemetry.instrument(name).totals)


async def wait_until(predicate: Any) -> None:
    with anyio.fail_after(2):
        while not predicate():  # noqa: ASYNC110 - polls state owned by the middleware, no event to wait on
            await anyio.sleep(0.001)


async def test_request_beyond_the_limit_is_shed_before_the_app_is_called() -> None:
    gate = Gate()
    telemetry = Telemetry()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=2, retry_after=3, telemetry=telemetry)
    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(ASGIHarness().run, mw, http_scope(path=f"/{i}"))
        await wait_until(lambda: gate.calls == 2)
        assert mw.snapshot()["in_use"] == 2
        shed = ASGIHarness(body=b"not read")
        await shed.run(mw, http_scope(path="/third"))
        assert shed.types == [START, BODY]
        assert shed.status == 503
        assert shed.header("retry-after") == "3"
        assert shed.header("content-type") == "application/problem+json"
        assert shed.json()["type"] == "overloaded"
        assert shed.receive_calls == 0  # the body was not read
        assert gate.calls == 2  # the app never saw the third request
        gate.release.set()
    assert mw.snapshot()["in_use"] == 0
    assert totals(telemetry, "asgi_resilience.concurrency.rejected") == {
        (("partition", "default"), ("reason", "queue_full")): 1
    }
    assert totals(telemetry, "asgi_resilience.concurrency.active") == {(("partition", "default"),): 0}


async def test_queued_request_runs_when_a_slot_frees() -> None:
    gate = Gate()
    telemetry = Telemetry()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=1, max_queue=1, queue_timeout=5, telemetry=telemetry)
    results: list[ASGIHarness] = []

    async def run(path: str) -> None:
        results.append(await ASGIHarness().run(mw, http_scope(path=path)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "/first")
        await wait_until(lambda: gate.calls == 1)
        tg.start_soon(run, "/queued")
        await wait_until(lambda: mw.snapshot()["queued"] == 1)
        assert gate.entered == ["/first"]
        gate.release.set()
    assert gate.entered == ["/first", "/queued"]
    assert [h.status for h in results] == [200, 200]
    assert mw.snapshot() | {"partitions": None} == {
        "limit": 1,
        "in_use": 0,
        "queued": 0,
        "adaptive": False,
        "partitions": None,
    }
    count, _ = totals(telemetry, "asgi_resilience.concurrency.queue.duration")[(("partition", "default"),)]
    assert count == 1
    assert totals(telemetry, "asgi_resilience.concurrency.queued") == {(("partition", "default"),): 0}


async def test_queue_timeout_sheds_the_waiter() -> None:
    gate = Gate()
    telemetry = Telemetry()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=1, max_queue=5, queue_timeout=0.05, telemetry=telemetry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope())
        await wait_until(lambda: gate.calls == 1)
        waited = await ASGIHarness().run(mw, http_scope(path="/late"))
        assert waited.status == 503 and waited.types == [START, BODY]
        assert mw.snapshot()["queued"] == 0
        gate.release.set()
    assert gate.calls == 1
    assert totals(telemetry, "asgi_resilience.concurrency.rejected") == {
        (("partition", "default"), ("reason", "queue_timeout")): 1
    }


@pytest.mark.parametrize(("lifo", "expected"), [(False, ["/0", "/1", "/2", "/3"]), (True, ["/0", "/3", "/2", "/1"])])
async def test_fifo_by_default_and_lifo_on_overload(lifo: bool, expected: list[str]) -> None:
    order: list[str] = []
    release = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        order.append(scope["path"])
        if scope["path"] == "/0":
            await release.wait()
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b""})

    mw = ConcurrencyLimitMiddleware(app, max_concurrent=1, max_queue=4, queue_timeout=5, lifo_on_overload=lifo)
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(ASGIHarness().run, mw, http_scope(path=f"/{i}"))
            await wait_until(lambda i=i: mw.snapshot()["queued"] == i)
        release.set()
    assert order == expected


async def test_slot_released_on_success_exception_disconnect_and_cancellation() -> None:
    telemetry = Telemetry()
    in_app: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/error":
            raise RuntimeError("boom")
        if path == "/disconnect":
            message = await receive()
            assert message["type"] == "http.disconnect"
            in_app.append(mw.snapshot()["in_use"])  # released at the disconnect, while the app still runs
            return
        if path == "/cancel":
            await anyio.sleep(5)
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"ok"})

    mw = ConcurrencyLimitMiddleware(app, max_concurrent=1, telemetry=telemetry)
    assert (await ASGIHarness().run(mw, http_scope(path="/ok"))).status == 200
    assert mw.snapshot()["in_use"] == 0
    with pytest.raises(RuntimeError):
        await ASGIHarness().run(mw, http_scope(path="/error"))
    assert mw.snapshot()["in_use"] == 0
    await ASGIHarness(disconnect_immediately=True).run(mw, http_scope(path="/disconnect"))
    assert in_app == [0]
    with anyio.move_on_after(0.05) as scope:
        await ASGIHarness().run(mw, http_scope(path="/cancel"))
    assert scope.cancelled_caught
    assert mw.snapshot()["in_use"] == 0
    assert (await ASGIHarness().run(mw, http_scope(path="/ok"))).status == 200  # the one slot still works
    assert totals(telemetry, "asgi_resilience.concurrency.active") == {(("partition", "default"),): 0}


async def test_a_streaming_response_holds_its_slot_until_the_final_body() -> None:
    more = anyio.Event()
    after_final: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/stream":
            await send({"type": START, "status": 200, "headers": []})
            await send({"type": BODY, "body": b"other"})
            return
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"a", "more_body": True})
        await more.wait()
        await send({"type": BODY, "body": b"b"})
        after_final.append(mw.snapshot()["in_use"])  # background work after the response: slot already free

    mw = ConcurrencyLimitMiddleware(app, max_concurrent=1)
    stream = ASGIHarness()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.run, mw, http_scope(path="/stream"))
        await wait_until(lambda: len(stream.messages) == 2)
        assert (await ASGIHarness().run(mw, http_scope(path="/other"))).status == 503
        more.set()
    assert stream.types == [START, BODY, BODY] and stream.body == b"ab"
    assert after_final == [0]
    assert (await ASGIHarness().run(mw, http_scope(path="/other"))).status == 200


async def test_exempt_paths_websocket_and_lifespan_pass_without_a_slot() -> None:
    gate = Gate()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=1, exempt=["/health", "/metrics/*"])
    gate.release.set()
    gate.release = anyio.Event()  # block again
    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope(path="/busy"))
        await wait_until(lambda: gate.calls == 1)
        seen: list[str] = []

        async def passthrough(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["type"])

        other = ConcurrencyLimitMiddleware(passthrough, max_concurrent=1)
        await ASGIHarness().run(other, http_scope(type="websocket"))
        await ASGIHarness().run(other, {"type": "lifespan"})
        assert seen == ["websocket", "lifespan"]
        gate.release.set()
        for path in ("/health", "/metrics/cpu"):
            assert (await ASGIHarness().run(mw, http_scope(path=path))).status == 200
    assert (await ASGIHarness().run(mw, http_scope(path="/"))).status == 200


async def test_partition_keeps_its_share_of_slots() -> None:
    gate = Gate()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=10, partitions={"/admin/*": 0.1})
    snap = mw.snapshot()["partitions"]
    assert (snap["/admin/*"]["limit"], snap["default"]["limit"]) == (1, 9)
    async with anyio.create_task_group() as tg:
        for i in range(9):
            tg.start_soon(ASGIHarness().run, mw, http_scope(path=f"/work/{i}"))
        await wait_until(lambda: gate.calls == 9)
        assert (await ASGIHarness().run(mw, http_scope(path="/work/x"))).status == 503  # default pool full
        tg.start_soon(ASGIHarness().run, mw, http_scope(path="/admin/users"))
        await wait_until(lambda: gate.calls == 10)  # admin still gets in
        assert (await ASGIHarness().run(mw, http_scope(path="/admin/more"))).status == 503  # its own share is 1
        gate.release.set()
    assert mw.snapshot()["in_use"] == 0


async def test_client_gone_before_the_503_is_not_an_error() -> None:
    gate = Gate()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=1)

    async def gone(message: Any) -> None:
        raise OSError("the client has disconnected")

    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope())
        await wait_until(lambda: gate.calls == 1)
        await mw(http_scope(), ASGIHarness().receive, gone)
        gate.release.set()


async def test_cancelled_while_queued_leaves_the_queue_and_passes_a_granted_slot_on() -> None:
    gate = Gate()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=1, max_queue=2, queue_timeout=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope(path="/first"))
        await wait_until(lambda: gate.calls == 1)
        with anyio.move_on_after(0.02):
            await ASGIHarness().run(mw, http_scope(path="/gave-up"))
        assert mw.snapshot()["queued"] == 0
        gate.release.set()
    assert gate.entered == ["/first"]
    assert mw.snapshot()["in_use"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrent": 0},
        {"max_concurrent": True},
        {"max_queue": -1},
        {"queue_timeout": -1},
        {"partitions": {"/admin/*": 1.5}},
        {"partitions": {"/a/*": 0.6, "/b/*": 0.5}},
        {"partitions": {"admin": 0.1}},
        {"exempt": "/health"},
        {"adaptive": True, "min_concurrent": 0},
        {"adaptive": True, "min_concurrent": 200, "max_concurrent": 100},
        {"adaptive": True, "algorithm": "vegas"},
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ConcurrencyLimitMiddleware(Gate(), **options)


async def test_adaptive_limit_shrinks_when_latency_rises_and_grows_back() -> None:
    clock = ManualClock()
    latency = [0.01]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(latency[0])  # the request "takes" this long on the injected clock
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b""})

    telemetry = Telemetry()
    mw = ConcurrencyLimitMiddleware(
        app, max_concurrent=100, min_concurrent=5, adaptive=True, window=0.1, clock=clock, telemetry=telemetry
    )

    async def windows(n: int) -> int:
        for _ in range(n * 12):  # 12 requests of >= 10 ms: more than one 0.1 s window of >= 10 samples
            await ASGIHarness().run(mw, http_scope())
        return mw.limit

    assert await windows(3) == 100  # healthy: stays at the ceiling
    latency[0] = 0.1  # ten times the baseline
    history = [await windows(1) for _ in range(10)]
    assert history[0] < 100 and history == sorted(history, reverse=True)
    assert history[-1] == 5  # floor
    latency[0] = 0.01
    recovered = [await windows(1) for _ in range(12)]
    assert recovered == sorted(recovered) and recovered[-1] == 100
    gauge = totals(telemetry, "asgi_resilience.concurrency.limit")
    assert gauge[(("partition", "all"),)] == 100
    assert mw.snapshot()["adaptive"] is True


async def test_adaptive_limit_counts_503_and_504_answers_as_drops() -> None:
    clock = ManualClock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(0.05)
        await send({"type": START, "status": 504, "headers": []})
        await send({"type": BODY, "body": b""})

    mw = ConcurrencyLimitMiddleware(
        app, max_concurrent=50, min_concurrent=2, adaptive=True, algorithm="aimd", window=0.1, clock=clock
    )
    for _ in range(10):
        await ASGIHarness().run(mw, http_scope())
    assert mw.limit < 50


async def test_raising_the_limit_admits_waiters() -> None:
    gate = Gate()
    mw = ConcurrencyLimitMiddleware(gate, max_concurrent=2, max_queue=2, queue_timeout=5)
    mw._set_limit(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope(path="/a"))
        await wait_until(lambda: gate.calls == 1)
        tg.start_soon(ASGIHarness().run, mw, http_scope(path="/b"))
        await wait_until(lambda: mw.snapshot()["queued"] == 1)
        mw._set_limit(2)
        await wait_until(lambda: gate.calls == 2)
        gate.release.set()
    assert mw.snapshot()["in_use"] == 0


async def test_head_request_is_shed_without_a_body_and_pathsend_releases_the_slot() -> None:
    gate = Gate()
    released: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/file":
            await send({"type": START, "status": 200, "headers": []})
            await send({"type": "http.response.pathsend", "path": "/tmp/file"})
            released.append(mw.snapshot()["in_use"])
            return
        await gate(scope, receive, send)

    mw = ConcurrencyLimitMiddleware(app, max_concurrent=1)
    await ASGIHarness().run(mw, http_scope(path="/file"))
    assert released == [0]
    async with anyio.create_task_group() as tg:
        tg.start_soon(ASGIHarness().run, mw, http_scope())
        await wait_until(lambda: gate.calls == 1)
        shed = await ASGIHarness().run(mw, http_scope("HEAD"))
        assert shed.status == 503 and shed.body == b"" and shed.header("retry-after") == "1"
        gate.release.set()
